"""``[gossip] reorder_peer_bytes`` in entraide.toml (issue 17): the share of the reorder
buffer one peer's entries may take, validated on load with a one-line error and handed
to the replicator's gossip engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config.datadir import DataDir
from agent.config.settings import (
    NodeConfig,
    load_node_config,
    parse_node_config,
    write_node_config,
)
from agent.errors import ConfigError
from agent.peering.replicator import Replicator
from protocol.entries import MAX_ENTRY_BYTES
from protocol.gossip_types import GossipParams
from protocol.keys import Identity


def test_default_is_the_engine_default_and_is_written_out(tmp_path: Path) -> None:
    assert NodeConfig(name="QC").gossip.reorder_peer_bytes == 8 << 20
    dd = DataDir(tmp_path)
    write_node_config(dd, NodeConfig(name="QC"))
    assert "reorder_peer_bytes = 8388608" in dd.config_path.read_text()
    # A file written before the setting existed still loads, with the default.
    text = dd.config_path.read_text().replace("reorder_peer_bytes = 8388608\n", "")
    dd.config_path.write_text(text)
    assert load_node_config(dd).gossip.reorder_peer_bytes == GossipParams.reorder_peer_bytes


def test_setting_reaches_the_replicators_engine() -> None:
    config = parse_node_config({"name": "QC", "gossip": {"reorder_peer_bytes": 4 << 20}})
    ledger: Any = object()  # the constructor does not read the ledger
    replicator = Replicator(Identity(b"\x01" * 32), lambda: [], ledger, config.gossip)
    assert replicator.params.reorder_peer_bytes == 4 << 20
    assert replicator.params.reorder_bytes == 32 << 20  # the total is unchanged


@pytest.mark.parametrize(("value", "reason"), [
    (0, "greater than or equal to"),
    (MAX_ENTRY_BYTES - 1, "greater than or equal to"),  # not even one entry fits
    ((32 << 20) + 1, "less than or equal to"),  # more than the whole buffer
    ("8MiB", "valid integer"),
    (1.5, "valid integer"),
])
def test_bad_values_are_one_clear_line_and_change_nothing(
        tmp_path: Path, value: object, reason: str) -> None:
    dd = DataDir(tmp_path)
    write_node_config(dd, NodeConfig(name="QC"))
    before = dd.config_path.read_bytes()
    edited = before.decode().replace("reorder_peer_bytes = 8388608",
                                     f"reorder_peer_bytes = {value!r}".replace("'", '"'))
    dd.config_path.write_text(edited)
    with pytest.raises(ConfigError) as caught:
        load_node_config(dd)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("entraide.toml: gossip.reorder_peer_bytes: ")
    assert reason in message


def test_bounds_accepted() -> None:
    for value in (MAX_ENTRY_BYTES, 32 << 20):
        config = parse_node_config({"name": "QC", "gossip": {"reorder_peer_bytes": value}})
        assert config.gossip.reorder_peer_bytes == value
