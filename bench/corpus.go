package bench

import (
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"time"
)

// CorpusVersion identifies the payload corpus and how workloads draw from
// it. Figures are comparable only between runs of the same version; change
// it whenever either changes. Version 2 draws texts in a pseudo-random
// order (version 1 cycled through the corpus in order, so a catch-up of
// 100k ops repeated the same runs of texts and compressed unrealistically
// well). Version 3 sends catch-up's texts without the 12-byte send stamp
// and sender that fan-out's latency needs (version 2 counted them as
// payload, though they compress worse than text).
const CorpusVersion = 3

// words are everyday chat words, with a few names, numbers and emoji.
var words = strings.Fields(`
i you we they it the a an and or but so to of in on at for with about from
is are was were be been have has had do did will would can could should
ok okay yes no yeah nope sure maybe thanks thank please sorry hi hey hello
bye later soon now today tomorrow tonight morning evening week weekend
lunch dinner coffee meeting call standup deploy release bug fix test review
merge branch prod staging server client phone laptop sync offline online
message chat group team project plan doc link file photo video screenshot
see look check send sent got get going go come back home work office late
early busy free great good nice cool awesome fine bad weird fun done ready
what when where why how who which this that these those here there
alice bob carol dave eve frank grace heidi ivan judy
1 2 3 5 10 15 20 30 45 60 100 9am 10am 11:30 noon 2pm 5pm
👍 😂 ❤️ 🎉 🙏 👀 ✅ 🔥 😅 🤔
`)

// Corpus returns n chat messages generated deterministically from seed:
// mostly short lines, some sentences, a few paragraphs, like real chat
// (mean length about 90 bytes).
func Corpus(seed uint64, n int) [][]byte {
	r := rand.New(rand.NewPCG(seed, CorpusVersion))
	out := make([][]byte, n)
	for i := range out {
		var k int
		switch p := r.IntN(100); {
		case p < 45:
			k = 1 + r.IntN(6)
		case p < 80:
			k = 7 + r.IntN(14)
		case p < 95:
			k = 21 + r.IntN(40)
		default:
			k = 61 + r.IntN(90)
		}
		var b strings.Builder
		for j := range k {
			w := words[r.IntN(len(words))]
			if j == 0 {
				w = strings.ToUpper(w[:1]) + w[1:]
			} else {
				b.WriteByte(' ')
			}
			b.WriteString(w)
		}
		b.WriteString([]string{"", ".", "!", "?", " :)"}[r.IntN(5)])
		out[i] = []byte(b.String())
	}
	return out
}

// stampLen is the size of the send-time stamp at the start of payloads
// used for latency.
const stampLen = 8

// Stamp returns text prefixed with t (Unix nanoseconds), for measuring
// send-to-receive latency.
func Stamp(t time.Time, text []byte) []byte {
	b := make([]byte, stampLen, stampLen+len(text))
	binary.BigEndian.PutUint64(b, uint64(t.UnixNano()))
	return append(b, text...)
}

// StampOf reads the send time of a stamped payload.
func StampOf(p []byte) (time.Time, bool) {
	if len(p) < stampLen {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(p))), true
}
