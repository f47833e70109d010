"""The operator dashboard, one module per page or concern.

common: who may look or act, and the helpers every view shares. run_list, list_refresh:
the run list and its live rows. overview: the last 24 hours. run_page: one run. actions:
what an operator does to one run; bulk_actions: to the runs ticked on the list; recover:
to the runs a filter selects. inbox: runs waiting for a person. workers: workers and
queues. start: start a run. deploy_check: what a new code version would do to runs in flight.
"""
