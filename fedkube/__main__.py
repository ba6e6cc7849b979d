from fedkube.cli import main

main()
