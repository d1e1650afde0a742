module trm-live/authsvc

go 1.26.8

require trm-live/contract v0.0.0

replace trm-live/contract => ../contract
