"""One thin module per metalcore process (supervisord program); each has ``main()``."""
