package clientsdk

import "testing"

// TestSavePositionTakesEveryCursor: the server's feed positions are
// cursors (sealed, to say nothing of other users' commits), in no numeric
// order. A device that kept only greater ones would resume from an older
// position after about half of its rounds, and catch up on what it holds.
func TestSavePositionTakesEveryCursor(t *testing.T) {
	d := memoryDevice(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, pos := range []uint64{1<<63 | 900, 1<<63 | 5, 1<<63 | 77, 3} {
		if err := d.savePosition("E", pos); err != nil {
			t.Fatal(err)
		}
		var stored uint64
		if _, err := getJSON(d.db, metaKey("feedpos"), &stored); err != nil {
			t.Fatal(err)
		}
		if d.feedPos != pos || stored != pos {
			t.Fatalf("saved %#x: the device holds %#x, its store %#x", pos, d.feedPos, stored)
		}
	}
}
