from tests import sockets_guard

sockets_guard.install()  # no unit test binds a socket (tests/integration/ may)
