from warmgate.cli import main

main()
