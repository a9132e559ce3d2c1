# One image for every evalbus process; compose.yaml picks the command per service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY services ./services
COPY infra ./infra
COPY evalbus ./evalbus
RUN pip install . && useradd --system --uid 10001 evalbus

USER evalbus
# compose.yaml overrides this per service: the same commands `evalbus up` and the tests run.
CMD ["faststream", "run", "--factory", "services.recorder.app:create_app"]
