"""Kubernetes: manifests for the ascend-operator (AscendJob) and Volcano, validated against the
shipped CRD schemas before they are written, and a thin apply/status/logs/down over the
official `kubernetes` client (`pip install 'orchestrate[k8s]'`).

    orchestrate up --backend k8s --emit out/ -i inventories/12node.yaml -c 65b \\
        --image registry/bloom:latest --volume bloom-ckpt --set data.path=/data/mr
"""
