"""``python -m agent.cli``: the ``entraide`` command without its installed script."""

from agent.cli.main import main

raise SystemExit(main())
