"""Pod folders and their environments: names, layout, settings, interpreters, builds."""
