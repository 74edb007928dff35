"""generators.code.reach: the static check sees I/O reached through aliases, introspection and strings."""

from __future__ import annotations

import pytest

from generators.code.corpus import function_candidates

REACHING = {
    "the reported alias": "import marshal, posixpath\ndef f(x):\n    o = posixpath.os; o.lseek(0, 0, 0)\n    return x\n",
    "another module's os": "import shutil\ndef f(x):\n    return shutil.os.system(x)\n",
    "a chain of aliases": "import posixpath\ndef f(x):\n    return posixpath.genericpath.os.getpid() + x\n",
    "a submodule's alias": "import email.utils\ndef f(x):\n    return email.utils.os.write(1, x)\n",
    "a module as a value": "import os\ndef f(x):\n    o = os\n    return o.getpid() + x\n",
    "attrgetter on a module": "import operator, posixpath\ndef f(x):\n    return operator.attrgetter('os.write')(posixpath)(1, x)\n",
    "getattr by literal": "import os\ndef f(x):\n    return getattr(os, 'system')(x)\n",
    "getattr by variable": "def f(x, n):\n    return getattr(x, n)\n",
    "globals()": "def f(x):\n    return globals()['os']\n",
    "subclasses": "def f(x):\n    return ().__class__.__bases__[0].__subclasses__()\n",
    "a reaching path in a string": "import operator\ndef f(x):\n    return operator.attrgetter('__init__.__globals__')(x)\n",
    "__import__": "def f(x):\n    return __import__('os').getpid()\n",
    "importlib": "import importlib\ndef f(x):\n    return importlib.import_module('os')\n",
    "posix": "import posix\ndef f(x):\n    return posix.write(1, x)\n",
    "a traceback's frame": "def f(x):\n    try:\n        1/0\n    except Exception as e:\n        return e.__traceback__.tb_frame.f_globals\n",
    "posixpath.exists": "import posixpath\ndef f(x):\n    return posixpath.exists(x)\n",
}
PURE = {
    "os.path.join": "import os\ndef f(x):\n    return os.path.join(x, 'a')\n",
    "os.sep": "import os\ndef f(x):\n    return x + os.sep\n",
    "math and a class": "import math\nfrom collections import OrderedDict\ndef f(x):\n    return math.sqrt(x) + len(OrderedDict())\n",
    "getattr by a plain literal": "def f(x):\n    return getattr(x, 'real')\n",
    "re": "import re\ndef f(x):\n    return re.sub('a', 'b', x)\n",
}


def _reason(source: str) -> str | None:
    return next(function_candidates(source, "m"))["_drop_reason"]


@pytest.mark.parametrize("source", REACHING.values(), ids=REACHING.keys())
def test_reaching_io_another_way_is_io(source):
    assert _reason(source) == "io"


@pytest.mark.parametrize("source", PURE.values(), ids=PURE.keys())
def test_pure_code_still_passes(source):
    assert _reason(source) is None
