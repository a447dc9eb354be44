"""Shared fixtures: one persona per human group, plus an outsider with no group."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True, scope="session")
def fast_password_hasher():
    """PBKDF2 costs ~300 ms a user by design; tests need logins, not that cost."""
    from django.conf import settings
    from django.contrib.auth.hashers import get_hashers, get_hashers_by_algorithm

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    get_hashers.cache_clear()
    get_hashers_by_algorithm.cache_clear()


def make_user(username: str, group: str | None = None):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, email=f"{username}@example.test")
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def personas(db):
    """admin, finance, security, viewer (one per group) and outsider (no group)."""
    users = {name: make_user(f"{name}-user", name) for name in ("admin", "finance", "security", "viewer")}
    users["outsider"] = make_user("outsider-user")
    return users


@pytest.fixture
def client_for(personas):
    def login(name: str) -> Client:
        client = Client()
        client.force_login(personas[name])
        return client

    return login
