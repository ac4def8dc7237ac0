# Image for the docker-compose `demo` service: redbreaker installed from this checkout.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install '.[embedded]'

CMD ["python", "-m", "redbreaker", "demo", "--url", "redis://redis:6379/0"]
