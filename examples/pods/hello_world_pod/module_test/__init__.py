def foo_in_module_test():
    return "foo_in_module_test"
