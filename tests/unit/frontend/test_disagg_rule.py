"""The conditional rule's settings: flags as defaults, the etcd key's fields over them."""

from __future__ import annotations

import pytest
from tandem.frontend.disagg import DisaggSettings


def test_a_field_left_out_keeps_the_flag_value() -> None:
    flags = DisaggSettings(max_local_prefill_length=1000, max_prefill_queue_size=8)
    assert flags.updated(b'{"max_prefill_queue_size": 0}') == DisaggSettings(1000, 0)
    assert flags.updated('{"max_local_prefill_length": 4096}') == DisaggSettings(4096, 8)
    assert flags.updated("{}") == flags


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"max_local_prefill_length": "long"}',
        b'{"max_local_prefill_length": true}',
        b'{"max_local_prefill_length": -1}',
        b'{"max_prefill_queue": 3}',
    ],
)
def test_a_malformed_key_is_refused_with_what_is_wrong(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not disaggregation settings"):
        DisaggSettings().updated(raw)
