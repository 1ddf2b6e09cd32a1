"""Where the routing state lives: one machine's state dir (proxy.state), or etcd for a fleet
(proxy.store.fleet over proxy.store.etcd; the document layout in proxy.store.keys)."""


class Conflict(Exception):
    """A change lost a race with another replica's: nothing was written (409)."""


class StoreDown(Exception):
    """The fleet's store cannot be reached: the change is refused, traffic flows on (503)."""
