package keysync

import (
	"crypto/sha256"
	"testing"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// testSigner signs the payloads of this package's tests, and testSigners
// trusts it. Its key is fixed, so that the fuzz seeds generated with it
// (TestVectors -update) do not change from run to run.
var (
	testSigner  = fixedSigner("shapeseal test signer")
	testSigners = []VerifyKey{testSigner.Public()}
)

func fixedSigner(label string) *chain.PrivateKey {
	seed := sha256.Sum256([]byte(label))
	s, err := chain.NewPrivateKey(seed[:])
	if err != nil {
		panic(err)
	}
	return s
}

func mustSigner() *chain.PrivateKey {
	s, err := chain.GenerateKey()
	if err != nil {
		panic(err)
	}
	return s
}

func TestVerifyKeyText(t *testing.T) {
	k := testSigner.Public()
	got, err := ParseVerifyKey(k.String())
	if err != nil || got != k {
		t.Fatalf("ParseVerifyKey(%s) = %v, %v", k, got, err)
	}
	list, err := ParseVerifyKeys(" " + k.String() + ",\n" + mustSigner().Public().String() + " ")
	if err != nil || len(list) != 2 || list[0] != k {
		t.Fatalf("ParseVerifyKeys = %v, %v", list, err)
	}
	s := k.String()
	for _, bad := range []string{"", "ssvk1", s[:len(s)-1], s + "A", "ssvk2" + s[5:], s[:10] + "+" + s[11:], s[:len(s)-1] + "B"} {
		if _, err := ParseVerifyKey(bad); err == nil {
			t.Errorf("ParseVerifyKey(%q) succeeded", bad)
		}
	}
	if str := testSigner.String(); str != "chain.PrivateKey("+s+")" {
		t.Errorf("Signer.String() = %q", str)
	}
}
