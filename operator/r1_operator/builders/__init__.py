"""Pure builders: spec + plan → the desired children and status. No kopf or kubernetes imports."""
