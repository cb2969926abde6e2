"""Broker URLs: passwords never leave envbisect unmasked."""

from __future__ import annotations

import pytest

from envbisect.masking import mask, mask_url_path, mask_urls


def test_mask_hides_the_password_only() -> None:
    assert mask("amqp://user:s3cret@host:5672/vh") == "amqp://user:***@host:5672/vh"
    assert mask("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "ENVBISECT_BROKER_URL=amqp://user:s3cret@host:5672/ ready",
            "ENVBISECT_BROKER_URL=amqp://user:***@host:5672/ ready",
        ),
        ("(see `redis://:pw@h:6379/0`)", "(see `redis://:***@h:6379/0`)"),
        ("two amqp://a:x@h/ amqps://b:y@h/", "two amqp://a:***@h/ amqps://b:***@h/"),
        (
            "no password: amqp://guest@h/ and http://h:80/x",
            "no password: amqp://guest@h/ and http://h:80/x",
        ),
    ],
)
def test_mask_urls_in_free_text(text: str, masked: str) -> None:
    assert mask_urls(text) == masked


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "http://10.0.0.5:41234/Zq8tok3n/" + "a" * 64 + "/pika-1.3.2-py3-none-any.whl",
            "http://10.0.0.5:41234/***/pika-1.3.2-py3-none-any.whl",
        ),
        ("http://10.0.0.5:41234/Zq8tok3n/", "http://10.0.0.5:41234/***/"),
        (
            "https://user:s3cret@files.example/p/x-1-py3-none-any.whl?X-Sig=s1gn&e=1#sha256=ab",
            "https://user:***@files.example/***/x-1-py3-none-any.whl?***",
        ),
        ("http://[fd00::2]:80/x-1-py3-none-any.whl", "http://[fd00::2]:80/x-1-py3-none-any.whl"),
    ],
)
def test_mask_url_path_hides_tokens_in_the_path_and_query(url: str, shown: str) -> None:
    assert mask_url_path(url) == shown
