# One image for web, worker and beat (docker-compose.yml picks the command).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY . .
RUN useradd --system --home /app warden && chown -R warden /app && mkdir /data /metrics && chown warden /data /metrics
USER warden
EXPOSE 8000
# One web process per core unless WARDEN_WEB_WORKERS says otherwise.
CMD ["sh", "-c", "exec uvicorn governance.asgi:application --host 0.0.0.0 --port 8000 --workers ${WARDEN_WEB_WORKERS:-$(nproc)}"]
