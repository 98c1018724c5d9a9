from tuiflow.cli.main import main

main()
