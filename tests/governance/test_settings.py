"""Settings come from the environment and are safe for production by default."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "WARDEN_SECURE_SSL_REDIRECT", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    base.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True)


def test_deploy_check_passes_with_debug_off_and_a_real_secret():
    result = run_manage(
        "check", "--deploy", "--fail-level", "WARNING",
        SECRET_KEY="k" * 20 + "-9f8a7c6b5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0", DEBUG="0", ALLOWED_HOSTS="warden.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_refuses_to_start_without_a_secret_key():
    result = run_manage("check", SECRET_KEY="", DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_a_malformed_boolean_is_a_clear_configuration_error():
    result = run_manage("check", SECRET_KEY="x" * 50, DEBUG="maybe")
    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr
