"""A client using three pods: the README's hello world, and two pods that need conflicting versions of
the same package (`packaging` 21.3 and 24.1), side by side in one process."""

import time

import pypods
from pypods.pods import PodLoader

started = time.perf_counter()

# The original design's API: functions injected into this module's globals.
pl = PodLoader("hello_world_pod", globals())
pl.load_pod()
print("hello_world_pod: foo(1, 2) =", foo(1, 2))  # noqa: F821 - injected by load_pod()
print("hello_world_pod: foo_in_module_test() =", foo_in_module_test())  # noqa: F821
pl.unload_pod()

# The module-style API: two pods whose dependencies conflict, used together.
with pypods.load("legacy_versions") as legacy, pypods.load("modern_versions") as modern:
    for pod in (legacy, modern):
        print(
            f"{pod.name}: packaging {pod.packaging_version()}; parse('2024-final') ->",
            pod.describe_version("2024-final"),
        )
    print("modern_versions: sorted_versions ->", modern.sorted_versions(["1.10", "1.9", "1.10rc1", "1.0.post2"]))
    calls = 2000
    begin = time.perf_counter()
    for _ in range(calls):
        modern.packaging_version()
    per_call = (time.perf_counter() - begin) / calls
    print(f"{calls} calls to modern_versions took {per_call * 1e6:.0f} µs each")

print(f"done in {time.perf_counter() - started:.2f}s")
