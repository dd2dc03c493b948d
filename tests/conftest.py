"""Fixtures shared by every test package."""

from tests.aws import aws_env, moto_server  # noqa: F401 - fixtures, used by name
