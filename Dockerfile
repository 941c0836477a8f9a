# Hosted StackMemory. Not built or run in this repository's CI (no Docker engine there): see README.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY tools ./tools
RUN pip install --no-cache-dir .
ENV STACKMEMORY_TRANSPORT=http STACKMEMORY_HOST=0.0.0.0 STACKMEMORY_PORT=8080
EXPOSE 8080
# nobody's passwd home (/nonexistent) cannot be written: give it one, where the local embedder downloads its
# model on first start (mount a volume on /home/stackmemory to keep it).
RUN mkdir -p /home/stackmemory/models && chown -R 65534:65534 /home/stackmemory
ENV HOME=/home/stackmemory STACKMEMORY_MODEL_CACHE=/home/stackmemory/models
USER nobody
CMD ["sh", "-c", "stackmemory db upgrade && stackmemory serve"]
