"""Examples shown at the end of every command's ``--help`` (the epilog), in one place so
they stay consistent with each other and with docs/operations.md. The command lines
are the same in both languages; their heading is translated."""

from __future__ import annotations

from agent.cli.lang import _

__all__ = ["EXAMPLES", "epilog"]

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("entraide init --name QC --jurisdiction Québec --public-url https://qc.example:8471",
         "entraide run", "entraide submit --type ipv4-addr --value 203.0.113.7 --tlp GREEN",
         "entraide --lang fr status"),
    "init": ("entraide init --name QC --jurisdiction Québec",
             "entraide init --name ON --api-port 9470 --peer-port 9471 "
             "--public-url https://on.example:9471",
             "ENTRAIDE_PASSPHRASE=... entraide init --name FED --passphrase-env "
             "ENTRAIDE_PASSPHRASE"),
    "id": ("entraide id", "entraide id --json"),
    "peers add": ("entraide peers add --card entraide1...",
                  "entraide peers add --name ON --key ed25519:... --url https://on.example:8471"),
    "peers update": ("entraide peers update ON --url https://on2.example:8471",
                     "entraide peers update ON --key ed25519:...",
                     "entraide peers update ON --url ''"),
    "peers remove": ("entraide peers remove ON",),
    "peers list": ("entraide peers list", "entraide peers list --json"),
    "token create": ("entraide token create --scope read --name siem",
                     "entraide token create --scope write --json"),
    "token list": ("entraide token list",),
    "token revoke": ("entraide token revoke siem",),
    "run": ("entraide run", "entraide run --data-dir /var/lib/entraide"),
    "submit": ("entraide submit --type ipv4-addr --value 203.0.113.7",
               "entraide submit --type domain-name --value evil.example --tlp AMBER --to ON,FED "
               "--description 'Phishing kit' --description-fr 'Trousse d’hameçonnage'",
               "entraide submit --type url --value 'hxxps://evil[.]example/login' --refang"),
    "query": ("entraide query --type ipv4-addr --value 203.0.113.7",
              "entraide query --origin ON --since 2026-01-01T00:00:00Z --json"),
    "retract": ("entraide retract 3f2a...e9 --reason 'false positive'",
                "entraide retract 3f2a...e9 --reason-fr 'faux positif' --json"),
    "sighting": ("entraide sighting 3f2a...e9", "entraide sighting 3f2a...e9 --count 12 "
                 "--seen-at 2026-03-01T12:00:00Z --note 'seen on our proxy'"),
    "status": ("entraide status", "entraide status --json"),
    "stream": ("entraide stream", "entraide stream --type domain-name --json",
               "entraide stream --last-event-id 0-42"),
    "import": ("entraide import iocs.csv --tlp AMBER --to ON,FED",
               "entraide import blocklist.txt --type ipv4-addr",
               "entraide import defanged-report.txt --refang",
               "entraide import bundle.json", "entraide import misp event.json"),
    "import misp": ("entraide import misp event.json",
                    "entraide import misp event.json --tlp AMBER --to ON,FED --json"),
    "export misp": ("entraide export misp -o event.json",
                    "entraide export misp --origin ON --since 2026-01-01T00:00:00Z --no-rules"),
    "ledger verify": ("entraide ledger verify", "entraide ledger verify --json"),
    "ledger export": ("entraide ledger export /backup/ledger.entraide",),
    "ledger import": ("entraide ledger import /backup/ledger.entraide",),
    "backup": ("entraide backup /backup/qc-2026-03-01.tar",),
    "restore": ("entraide restore /backup/qc-2026-03-01.tar --data-dir /var/lib/entraide",),
    "doctor": ("entraide doctor", "entraide doctor --json"),
    "forks list": ("entraide forks list",),
    "forks clear": ("entraide forks clear ON",),
    "erase": ("entraide erase 3f2a...e9 --reason 'personal data'",),
    "demo": ("entraide demo", "entraide --lang fr demo"),
    "rules": ("entraide rules submit crash_override.yar --type yara --tlp AMBER --to ON,FED",
              "entraide rules list --type sigma --current",
              "entraide rules export --type yara -o /etc/yara/entraide.yar",
              "entraide rules retract 3f2a...e9 --reason obsolete"),
    "playbooks": ("entraide playbooks submit playbook.json --tlp GREEN",
                  "entraide playbooks list", "entraide playbooks show 3f2a...e9"),
    "aid": ("entraide aid request --title 'Ransomware: hospitals' --severity critical "
            "--need forensics --need incident-coordination --description-en 'EHR down' "
            "--contact 'BC CSIRT' --tlp RED --to FED,QC",
            "entraide aid list --status open", "entraide aid offer 3f2a...e9 --kind forensics "
            "--detail-fr 'Deux analystes' --people 2",
            "entraide aid close 3f2a...e9 --summary-en 'Restored' --summary-fr 'Rétabli'"),
    "capabilities": ("entraide capabilities set --skills forensics,recovery --languages fr,en "
                     "--hours 24/7 --contact 'CSIRT Québec'",
                     "entraide capabilities list --need forensics --language fr"),
    "completion": ("entraide completion bash > /etc/bash_completion.d/entraide",
                   "source <(entraide completion bash)"),
}


def epilog(words: str) -> str | None:
    """The examples of the command ``words`` (``""`` for ``entraide`` itself), or None."""
    lines = EXAMPLES.get(words)
    if not lines:
        return None
    return _("examples:") + "\n" + "\n".join("  " + line for line in lines)
