# Template pod.py file inside the hello_world_pod pod.
from pods.hello_world_pod.module_test import foo_in_module_test  # noqa: F401 - offered by the pod

"""
Write your module's functions in this area.
"""


def foo(x, y):
    """Add two things, inside the pod."""
    return x + y


# Don't change anything here!
if __name__ == "__main__":
    from pypods.pods import PodListener

    pl = PodListener()  # PodListener will send output back to the pod client.
    msg = pl.read_stdin()  # Pod client writes function name and parameters to pod's stdin.
    if msg:
        # Unpack stdin to get function data
        function_name, args, kwargs = msg["name"], msg["args"], msg["kwargs"]
        try:
            if function_name in globals():
                function_output = globals()[function_name](*args, **kwargs)
                pl.write_stdout(function_output)
            else:
                pl.write_stderr(f"Function {function_name} does not exist in pod")
        except Exception as e:
            pl.write_stderr(str(e))
