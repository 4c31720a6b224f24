"""Imported only by a forkserver, as its preload: the forkserver (and so, through
:func:`mixbatch.lock.exit_with_parent` in each worker, the workers it forks) ends when the
process that started it ends, even by ``kill -9``. Never import it elsewhere."""

from mixbatch.lock import exit_with_parent

exit_with_parent()
