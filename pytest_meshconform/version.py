"""The package's version, in one place: pyproject.toml reads it (dynamic version), the face
(`pytest_meshconform.__version__`), the reports and the local mesh import it."""

__all__ = ["__version__"]

__version__ = "0.1.0"
