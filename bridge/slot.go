package bridge

import "strings"

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of the
// key, or of its hash tag (the part between the first "{" and the next
// "}", when not empty), modulo 16384.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	return int(crc16(key) % clusterSlots)
}

func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// readGroups splits the streams (by index) into the sets read by one
// XREADGROUP each: one set on a single server or a Sentinel master, one
// per hash slot on a cluster, which refuses a command whose keys span
// slots (CROSSSLOT). Order follows BRIDGE_STREAMS.
func readGroups(streams []string, cluster bool) [][]int {
	if !cluster {
		all := make([]int, len(streams))
		for i := range all {
			all[i] = i
		}
		return [][]int{all}
	}
	bySlot := map[int]int{} // slot -> index in groups
	var groups [][]int
	for i, s := range streams {
		slot := keySlot(s)
		g, ok := bySlot[slot]
		if !ok {
			g = len(groups)
			bySlot[slot] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	return groups
}
