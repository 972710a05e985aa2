from __future__ import annotations

import pickle

import pytest

from astr_ray.errors import MessageFormatError, ProviderRetryableError
from astr_ray.message import (
    ChatType,
    Event,
    File,
    Image,
    Mention,
    Reply,
    ReplyTo,
    Sender,
    Text,
    Voice,
    make_session_key,
    parse_session_key,
)


def _event(**kw: object) -> Event:
    base: dict[str, object] = dict(
        platform_id="onebot",
        chat_type="group",
        chat_id="123",
        sender=Sender(id="42", name="Ann"),
        message_id="m1",
    )
    base.update(kw)
    return Event.model_validate(base)


def test_every_component_round_trips_through_a_dict() -> None:
    comps = (
        Text(text="hi "),
        Mention(user_id="7", name="bot"),
        ReplyTo(message_id="m0"),
        Image(url="https://x/y.png"),
        File(name="a.pdf", size=3),
        Voice(file_id="v1", duration_s=2.5),
    )
    ev = _event(components=comps)
    back = Event.from_dict(ev.to_dict())
    assert back == ev
    assert back.session_key == "onebot:group:123"
    assert back.text == "hi "


def test_session_keys() -> None:
    assert make_session_key("tg", ChatType.PRIVATE, "a:b") == "tg:private:a:b"
    assert parse_session_key("tg:private:a:b") == ("tg", ChatType.PRIVATE, "a:b")
    for bad in ("tg", "tg:dm:1", ":private:1", "tg:private:"):
        with pytest.raises(MessageFormatError):
            parse_session_key(bad)
    with pytest.raises(MessageFormatError):
        make_session_key("a:b", "private", "1")


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"platform_id": "x"}, "chat_type"),
        (
            {
                "platform_id": "x",
                "chat_type": "dm",
                "chat_id": "1",
                "sender": {"id": "1"},
                "message_id": "m",
            },
            "chat_type",
        ),
        (
            {
                "platform_id": "x",
                "chat_type": "private",
                "chat_id": "1",
                "sender": {"id": "1"},
                "message_id": "m",
                "components": [{"type": "hologram"}],
            },
            "components.0",
        ),
        ("not a dict", "<root>"),
    ],
)
def test_malformed_events_are_refused_with_the_field(data: object, where: str) -> None:
    with pytest.raises(MessageFormatError) as err:
        Event.from_dict(data)
    assert where in str(err.value)


def test_reply_dict_and_errors_pickle_with_context() -> None:
    r = Reply.of_text("a:private:b", "m1", "hello", error="busy")
    assert Reply.from_dict(r.to_dict()) == r and r.text == "hello"
    exc = ProviderRetryableError("HTTP 429", 1.5, provider="p1")
    back = pickle.loads(pickle.dumps(exc))
    assert isinstance(back, ProviderRetryableError)
    assert back.retry_after == 1.5 and back.context == {"provider": "p1"}
    assert str(back) == "HTTP 429 (provider=p1)"
