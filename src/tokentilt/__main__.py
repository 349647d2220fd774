from tokentilt.cli import main

raise SystemExit(main())
