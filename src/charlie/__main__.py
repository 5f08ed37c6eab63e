from charlie.cli import main

raise SystemExit(main())
