from kv_transition.cli import main

main()
