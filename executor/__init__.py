"""kiln: build container images from a Dockerfile, the way kaniko does."""

__version__ = "0.1.0"
