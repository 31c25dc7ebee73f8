import "pe"

rule dragos_crashoverride_exporting_dlls {
    meta: 
        description = "CRASHOVERRIDE v1 Suspicious Export"
        author = "Dragos Inc"
        reference = "https://t.co/h8QaIP4FU8"
    condition:
        pe.exports("Crash") & pe.characteristics
}
