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

"""Which failures of the compute manager's event handler may pass.

The handler reads and saves the instance through nova-conductor over the
message bus. When RabbitMQ restarts, or the database behind the conductor
does, the call times out or the conductor answers with the database's
error; the same event handed over again a little later succeeds. Any other
error (a bug, an instance gone) would only fail again.
"""

from oslo_db import exception as db_exception
import oslo_messaging as messaging

# Raised in nova-compute itself.
_LOCAL = (
    messaging.MessagingTimeout,
    messaging.MessageDeliveryFailure,
    db_exception.DBConnectionError,
    db_exception.DBDeadlock,
)
# Raised in nova-conductor, and seen here as a RemoteError of that name
# (oslo.messaging rebuilds only the exception classes Nova allows).
_REMOTE_NAMES = frozenset(error.__name__ for error in _LOCAL)


def may_pass(error):
    """True when handling the event again later may succeed."""
    if isinstance(error, _LOCAL):
        return True
    return (isinstance(error, messaging.RemoteError) and
            error.exc_type in _REMOTE_NAMES)
