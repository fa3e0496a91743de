"""Deployment artefacts: the Dockerfile and the Helm chart under helm/."""
