"""A node's configuration on disk: the data directory (key, lock, atomic writes),
``entraide.toml`` (settings), the trust list ``peers.toml`` (trust) and the API tokens
(tokens). Every file is checked on load by strict models; every problem is one
``ConfigError`` line naming the file and the field. Nothing here starts a task or
opens a socket: the node and the CLI read and edit these files through this package."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.config.datadir import (
        DEFAULT_DATA_DIR,
        ENV_HOME,
        DataDir,
        FileStamp,
        atomic_write,
        file_stamp,
        passphrase_from_env,
        read_bounded,
        resolve_data_dir,
        take_passphrase_from_env,
    )
    from agent.config.settings import (
        ApiConfig,
        GossipConfig,
        LogConfig,
        NodeConfig,
        PeerListenerConfig,
        RetentionConfig,
        StorageConfig,
        create_node,
        load_node_config,
        parse_node_config,
        write_node_config,
    )
    from agent.config.tokens import (
        MAX_TOKENS,
        TOKEN_PREFIX,
        Scope,
        TokenRecord,
        TokenStore,
        authenticate,
        hash_token,
        token_of,
    )
    from agent.config.trust import (
        MAX_PEERS,
        PeerEntry,
        TrustList,
        TrustListWatcher,
        edit_trust_list,
        load_trust_list,
        save_trust_list,
    )

__all__ = [
    "DEFAULT_DATA_DIR",
    "ENV_HOME",
    "MAX_PEERS",
    "MAX_TOKENS",
    "TOKEN_PREFIX",
    "ApiConfig",
    "DataDir",
    "FileStamp",
    "GossipConfig",
    "LogConfig",
    "NodeConfig",
    "PeerEntry",
    "PeerListenerConfig",
    "RetentionConfig",
    "Scope",
    "StorageConfig",
    "TokenRecord",
    "TokenStore",
    "TrustList",
    "TrustListWatcher",
    "atomic_write",
    "authenticate",
    "create_node",
    "edit_trust_list",
    "file_stamp",
    "hash_token",
    "load_node_config",
    "load_trust_list",
    "parse_node_config",
    "passphrase_from_env",
    "read_bounded",
    "resolve_data_dir",
    "save_trust_list",
    "take_passphrase_from_env",
    "token_of",
    "write_node_config",
]

__getattr__ = lazy_exports(__name__, __file__)
