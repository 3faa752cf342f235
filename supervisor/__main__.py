from supervisor.app.cli import main

main()
