# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""The driver methods that stop or restart domains, tracked per call.

:func:`tracking_operations` wraps the methods of
:data:`~nova_lifecycle.eventpath.operations.TRACKED_METHODS` that the
driver class inherits from upstream, so each call registers its instance
with the event path (``self.event_path.track``) for its duration.
"""

import functools
import inspect

from nova_lifecycle.eventpath import operations


def _instance_uuid(signature, args, kwargs):
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return None
    instance = bound.arguments.get('instance')
    return getattr(instance, 'uuid', None)


def tracked(cls, name):
    """A method of ``cls`` that runs its base class's ``name`` as an operation.

    The base method is looked up on every call (``super()``), so a patch of
    upstream's method (a test's mock, an operator's hot-fix) reaches it.
    The call is counted as operation ``name`` on the UUID of its
    ``instance`` argument, read with upstream's signature, which the
    wrapper also shows to ``inspect`` so the driver's API looks like
    upstream's.
    """
    signature = inspect.signature(getattr(cls, name))

    def wrapper(self, *args, **kwargs):
        method = getattr(super(cls, self), name)
        uuid = _instance_uuid(signature, (self,) + args, kwargs)
        if uuid is None:
            return method(*args, **kwargs)
        with self.event_path.track(uuid, name):
            return method(*args, **kwargs)

    functools.update_wrapper(wrapper, getattr(cls, name))
    del wrapper.__wrapped__
    wrapper.__signature__ = signature
    return wrapper


def tracking_operations(cls):
    """Class decorator: wrap the tracked methods ``cls`` inherits.

    Instances of the class must have an ``event_path`` attribute, an
    :class:`~nova_lifecycle.eventpath.path.EventPath`.
    """
    for name in operations.TRACKED_METHODS:
        if name in vars(cls):
            raise TypeError('%s defines %s itself; tracking_operations wraps '
                            'inherited methods only' % (cls.__name__, name))
        if hasattr(cls, name):
            setattr(cls, name, tracked(cls, name))
    return cls
