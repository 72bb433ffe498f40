"""Imported by the fork server of the scan workers: loads and warms up the scan's kernels once.

Every worker is forked from that server, so none pays the first-call cost of the Arrow kernels.
"""

from ft_assets.dataset.validate import warm_up

warm_up()
