package bench

import (
	"encoding/binary"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// CorpusVersion identifies the payload corpus and how workloads draw from
// it. Figures are comparable only between runs of the same version; change
// it whenever either changes.
//
//   - Version 2 draws texts in a pseudo-random order (version 1 cycled
//     through the corpus in order, so a catch-up of 100k ops repeated the
//     same runs of texts and compressed unrealistically well).
//   - Version 3 sends catch-up's texts without the 12-byte send stamp and
//     sender that fan-out's latency needs (version 2 counted them as
//     payload, though they compress worse than text).
//   - Version 4 writes text that compresses as real text does. Version 3
//     drew its words evenly from about 200, and its 10,000 texts came back
//     in every catch-up of more: zstd took 1,000 of its texts to 0.37 of
//     their size, where a novel's prose cut to the same lengths goes to
//     0.42 (Mark Twain's Tom Sawyer, zstd's default level, batches of
//     1,000). Words now follow Zipf's law over about 700 everyday words,
//     with a tail of rarer ones (names, jargon, typos), numbers, emoji and
//     links; the workloads draw from 100,000 texts. TestCorpusCompressesAsText
//     holds the ratio near prose's.
const CorpusVersion = 4

// common are everyday chat and English words, about in order of how often
// they are used: Corpus draws them by rank, under Zipf's law.
var common = strings.Fields(`
i the you to a it and that is of in we on for ok this be have so but not
with at do can just are yes what my no will it's i'm if get me was all
about there up your they know like one out think good now then how he
she would time when go see did as need from thanks too also, sure got
yeah could should or an let's today some want more been still really here
back any them just working going make tomorrow today's okay let which
fine did work new done by meeting our us call yet why who lol right maybe
much well great looks after first because last where day take check thing
sounds than over before week other test fix thank oh hey please into said
hi morning something send sent only way people wait very off try even
again next around already sorry soon later never same use doing these
those look looking tonight though home pretty every lunch coffee sorry,
while long little bit both few until kind team build deploy release
review branch merge issue bug prod staging server client phone laptop
sync offline online message chat group project plan doc link file photo
video screenshot office late early busy free nice cool awesome bad weird
fun ready hello bye weekend evening dinner tomorrow, tonight? anyone
everyone someone nothing anything everything else another own most many
lot lots whole half full best better worse less least enough almost
probably actually definitely basically honestly literally seriously
exactly totally super quite rather such must might may shall need
needs needed want wants wanted like likes liked love loved hate idea
ideas question questions answer problem problems reason reasons point
fact case part place world life hand eye head house room door car road
city country water food money job side end line name number word words
story friend friends family mom dad kids kid baby dog cat game games
movie show music song book books news email emails note notes list
lists change changes update updates version feature features data
user users account password login error errors crash logs log config
script code test tests ticket tickets board sprint standup demo retro
slack zoom calendar invite agenda minutes deadline estimate priority
blocker blocked unblocked status report summary draft final copy
version, tomorrow. today. yesterday monday tuesday wednesday thursday
friday saturday sunday january march april june july august september
october november december spring summer autumn winter hour hours minute
minutes second seconds moment month months year years night nights
noon midnight ago since until till during between through across along
under above below behind beside near far inside outside without within
upon toward against among beyond young old big small large short tall
high low hot cold warm cool fast slow quick easy hard simple clear clean
dirty quiet loud happy sad angry tired sick hungry glad proud sure?
true false real fake open closed public private main big huge tiny
important interesting boring funny strange different similar special
normal usual general specific possible impossible available ready? able
wrong correct right? certain likely unlikely obvious complete empty
broken fixed stuck lost found missing wrong? safe risky cheap expensive
bring buy call came carry catch choose close come cook cut decide drive
drop eat enjoy explain fall feel felt fill find finish fly follow forget
forgot give gave grab grow guess happen hear heard help hold hope hurry
join keep kept kill laugh lead learn leave left lend lie listen live
lose mean meant meet met mind miss move nap notice order own pack pass
pay pick play pull push put read reach realize remember remind rest
return ride ring run save say says search sell set share shop sing sit
sleep slept speak spend stand start stay stop study swim talk teach tell
told thought throw touch travel turn understand wake walk wash watch
wear win wish wonder worry write wrote asked asking called calling
checked checking coming doing done? eating feeling getting giving
having helping hoping leaving listening living making meeting moving
playing putting reading running saying seeing sending sitting sleeping
starting staying taking talking telling thinking trying waiting walking
watching working writing airport train bus flight ticket hotel trip
holiday vacation beach park gym store shop market restaurant bar pizza
burger sushi salad pasta tea beer wine cake bread breakfast snack
birthday party wedding gift present card congrats congratulations cheers
welcome tbh btw imo idk omg brb np ty thx pls afaik fyi asap eta
haha hahaha lmao hmm ugh yay wow whoa nah yep uh um ah oops
`)

// names are people, places and products that chats mention.
var names = strings.Fields(`
Alice Bob Carol Dave Eve Frank Grace Heidi Ivan Judy Mallory Niaj Olivia
Peggy Rupert Sybil Trent Victor Walter Priya Mateo Yuki Amara Lars Chen
Fatima Diego Ingrid Kofi Sasha Tomás Noor Emeka Hana London Paris Berlin
Lisbon Tokyo Lagos Seoul Austin Denver Toronto Madrid Oslo Kraków Nairobi
Android iOS Linux macOS Postgres Kafka Redis Grafana Jira GitHub Figma
`)

// emoji are the reactions and faces people type.
var emoji = strings.Fields(`👍 😂 ❤️ 🎉 🙏 👀 ✅ 🔥 😅 🤔 😊 🙌 😭 💯 🚀 😬 🤷 👋 ☕ 🍕`)

// domains are where shared links point.
var domains = strings.Fields(`github.com docs.google.com youtu.be maps.app.goo.gl en.wikipedia.org
news.ycombinator.com example.com meet.google.com open.spotify.com x.com`)

// syllables build the rarer words of the tail: jargon, names nobody else
// uses, typos.
var syllables = strings.Fields(`ka ri to men sa lo vi de na pe tor al ex in ber gan pro tek os um
ly ist ing ver com tra bel fi nor wen qua zo ish ark dal mo`)

// Corpus returns n chat messages generated deterministically from seed:
// mostly short lines, some sentences, a few paragraphs, like real chat
// (mean length about 80 bytes).
func Corpus(seed uint64, n int) [][]byte {
	r := rand.New(rand.NewPCG(seed, CorpusVersion))
	rank := rand.NewZipf(r, 1.07, 2, uint64(len(common)-1))
	out := make([][]byte, n)
	var b strings.Builder
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
		b.Reset()
		for j := range k {
			if j > 0 {
				b.WriteByte(' ')
			}
			w := word(r, rank)
			if j == 0 && r.IntN(3) > 0 { // most lines start capitalized
				w = strings.ToUpper(w[:1]) + w[1:]
			}
			b.WriteString(w)
		}
		if r.IntN(30) == 0 {
			b.WriteString(" https://")
			b.WriteString(domains[r.IntN(len(domains))])
			b.WriteByte('/')
			for range 8 + r.IntN(12) {
				b.WriteByte(base62[r.IntN(len(base62))])
			}
		}
		b.WriteString([]string{"", "", ".", "!", "?", " :)", "..."}[r.IntN(7)])
		out[i] = []byte(b.String())
	}
	return out
}

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// word draws one word: mostly a common one by its Zipf rank, sometimes a
// name, a number, an emoji or a rarer word.
func word(r *rand.Rand, rank *rand.Zipf) string {
	switch p := r.IntN(1000); {
	case p < 880:
		return common[rank.Uint64()]
	case p < 915:
		return names[r.IntN(len(names))]
	case p < 945:
		switch r.IntN(3) {
		case 0:
			return strconv.Itoa(r.IntN(100))
		case 1:
			return strconv.Itoa(1+r.IntN(12)) + ":" + strconv.Itoa(r.IntN(6)) + "0"
		default:
			return "$" + strconv.Itoa(5+r.IntN(500))
		}
	case p < 970:
		return emoji[r.IntN(len(emoji))]
	default:
		var w strings.Builder
		for range 2 + r.IntN(3) {
			w.WriteString(syllables[r.IntN(len(syllables))])
		}
		return w.String()
	}
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
