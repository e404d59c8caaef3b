from fedstream.cli.main import main

raise SystemExit(main())
