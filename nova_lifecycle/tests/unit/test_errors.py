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


from nova import exception
from oslo_db import exception as db_exception
import oslo_messaging as messaging

from nova_lifecycle.compute import errors
from nova_lifecycle.tests import base


class MayPassTest(base.TestCase):
    """Which handler failures make the event path try again."""

    def test_the_message_bus_away(self):
        self.assertTrue(errors.may_pass(messaging.MessagingTimeout('60s')))
        self.assertTrue(errors.may_pass(
            messaging.MessageDeliveryFailure('no route')))

    def test_the_database_away_here(self):
        self.assertTrue(errors.may_pass(
            db_exception.DBConnectionError('gone')))
        self.assertTrue(errors.may_pass(db_exception.DBDeadlock()))

    def test_the_database_away_behind_the_conductor(self):
        self.assertTrue(errors.may_pass(messaging.RemoteError(
            'DBConnectionError', '(2013, Lost connection)')))

    def test_other_errors_would_only_fail_again(self):
        self.assertFalse(errors.may_pass(ValueError('bug')))
        self.assertFalse(errors.may_pass(
            exception.InstanceNotFound(instance_id='x')))
        self.assertFalse(errors.may_pass(
            messaging.RemoteError('InstanceNotFound', 'gone')))
        self.assertFalse(errors.may_pass(db_exception.DBError('bad SQL')))
