from dlforge.cli import main

raise SystemExit(main())
