"""The node's storage: the ledger (every entry of every trusted origin, in one SQLite
file, stored in chain order and re-verifiable from its bytes), the query tables and
reads the API answers from, batches and the ahead-of-gap buffer of the ingest path,
verification, export and import, the schema and its migrations, and the TAXII index.
Storage stores what it is given, already verified or already signed: it imports
neither the API, the workers nor the node, and signs nothing."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.storage.ledger import (
        MAX_APPEND_BATCH,
        MAX_INGEST_BATCH,
        MAX_SUBSCRIBERS,
        RANGE_CHUNK_BYTES,
        RANGE_CHUNK_ENTRIES,
        BufferLimits,
        ForkRecord,
        Gap,
        Head,
        ImportResult,
        IngestResult,
        Ledger,
        LedgerCounts,
        ObservationEvent,
        OwnDraft,
        PreparedObservation,
        Refusal,
        Subscription,
        VerifyProblem,
        VerifyReport,
    )
    from agent.storage.lookup import MMAP_BYTES, answer_indicator, connect_reader
    from agent.storage.queries import (
        DEFAULT_PAGE,
        MAX_PAGE,
        IndexRecord,
        Page,
        QueryReader,
        build_record,
        canonical_indicator,
        decode_cursor,
        encode_cursor,
        format_ms,
        indicator_aggregated,
        indicator_bounded,
        with_names,
    )
    from agent.storage.schema import SCHEMA_VERSION, lock_ledger, schema_version
    from agent.storage.taxii_index import (
        Collection,
        IndexPage,
        IndexRow,
        KnownObject,
        TaxiiIndex,
        VersionFilter,
    )

__all__ = [
    "DEFAULT_PAGE",
    "MAX_APPEND_BATCH",
    "MAX_INGEST_BATCH",
    "MAX_PAGE",
    "MAX_SUBSCRIBERS",
    "MMAP_BYTES",
    "RANGE_CHUNK_BYTES",
    "RANGE_CHUNK_ENTRIES",
    "SCHEMA_VERSION",
    "BufferLimits",
    "Collection",
    "ForkRecord",
    "Gap",
    "Head",
    "ImportResult",
    "IndexPage",
    "IndexRecord",
    "IndexRow",
    "IngestResult",
    "KnownObject",
    "Ledger",
    "LedgerCounts",
    "ObservationEvent",
    "OwnDraft",
    "Page",
    "PreparedObservation",
    "QueryReader",
    "Refusal",
    "Subscription",
    "TaxiiIndex",
    "VerifyProblem",
    "VerifyReport",
    "VersionFilter",
    "answer_indicator",
    "build_record",
    "canonical_indicator",
    "connect_reader",
    "decode_cursor",
    "encode_cursor",
    "format_ms",
    "indicator_aggregated",
    "indicator_bounded",
    "lock_ledger",
    "schema_version",
    "with_names",
]

__getattr__ = lazy_exports(__name__, __file__)
