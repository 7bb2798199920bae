"""Tests of the Kubernetes API fake itself (kube_fakes.py), with literal vectors from RFC 6455."""

from __future__ import annotations

import socket

from kube_fakes import encode_frame, read_frame, websocket_accept


def test_accept_key_is_rfc6455_example() -> None:
    # RFC 6455 section 1.3: key "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_frames_are_rfc6455_examples() -> None:
    # RFC 6455 section 5.7: "Hello", unmasked and masked with 37 fa 21 3d.
    assert encode_frame(0x1, b"Hello") == bytes.fromhex("810548656c6c6f")
    masked = encode_frame(0x1, b"Hello", mask=bytes.fromhex("37fa213d"))
    assert masked == bytes.fromhex("818537fa213d7f9f4d5158")
    # 256 bytes binary message, unmasked: 0x82 0x7E 0x0100 [256 bytes]
    assert encode_frame(0x2, bytes(256))[:4] == bytes.fromhex("827e0100")


def test_read_frame_unmasks() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(bytes.fromhex("818537fa213d7f9f4d5158"))
        assert read_frame(right) == (0x1, b"Hello")
        left.close()
        assert read_frame(right) is None
