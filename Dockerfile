# Image for the docker-compose `demo` and `dashboard` services: redbreaker installed from
# this checkout, with the dashboard's web stack and the embedded Redis (so that
# `docker run <image>` alone runs the demo with no Redis server).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install '.[embedded,dashboard]'

CMD ["python", "-m", "redbreaker", "demo"]
