"""fedctl: the fleet CLI.

It is a thin client of cloudcore's HTTP API: it validates manifests locally with
the protocol package's models (so a typo is named before anything is sent), then
talks JSON over HTTP. It never imports cloudcore or edgecore; the HTTP contract
is the only thing it shares with the cloud besides `shared.models`.
"""
