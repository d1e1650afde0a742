module trm-live/deploy/healthcheck

go 1.26.8
