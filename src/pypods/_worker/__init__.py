"""Code that runs inside a pod's interpreter: standard library only, Python 3.8 syntax, relative imports.

The client never installs this package into a pod. It starts the pod's interpreter with
``-I -c BOOTSTRAP``, which loads this folder by path under the private name ``_pypods_worker``.
"""

BOOTSTRAP = (
    "import importlib.util as u, sys\n"
    "p = sys.argv[1]\n"
    "s = u.spec_from_file_location('_pypods_worker', p + '/__init__.py', submodule_search_locations=[p])\n"
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
    "from _pypods_worker.serve import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)

# The same loading, then a template instead of a worker (``template.py``): import pod.py once, fork workers.
TEMPLATE_BOOTSTRAP = BOOTSTRAP.replace(
    "from _pypods_worker.serve import main", "from _pypods_worker.template import main"
)
